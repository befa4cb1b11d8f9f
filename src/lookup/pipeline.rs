//! The lookup pipeline between the HTTP handler and the upstream: cache -> coalesce -> fetch,
//! and back: store by status, post to the answer board, wake the followers.
//!
//! 1. A fresh cached answer is served at once (`X-Cache: hit`).
//! 2. A processing answer past its interval is refreshed: when a slot is free at once, or
//!    expected within a tenth of the interval (`CachePolicy::refresh_wait`), the caller waits for
//!    the fresh answer; when the budget is short (the refresh has to queue longer, or is
//!    throttled), the caller gets the last known answer at once with its true `Age`
//!    (`X-Cache: stale`, stale-while-revalidate) and the refresh keeps its turn in the schedule,
//!    by staleness, for as long as anyone asks. A refresh that fails is answered the same way
//!    while stale-if-error allows.
//! 3. Otherwise nothing usable is known: the caller waits for budget up to
//!    `TASKGATE_MAX_QUEUE_WAIT` (a long poll: up to its wait), ahead of every refresh.
//! 4. Either way the lookup joins the fetch under way for its flow id, or leads a new one. The
//!    fetch runs detached on the leader's worker, bounded by the configured request timeout, so
//!    no caller's disconnect or short deadline cancels it for the others. It looks across
//!    replicas (`replicas`), then makes its own attempts (`attempts`).
//! 5. Answers are stored by status (final, processing, not found); errors are shared with the
//!    followers of this fetch but never stored.
//!
//! Traced (when traces are on): a cache hit makes no span. The leader's detached fetch carries
//! the leader's trace context and is a `fetch` span (its budget waits and attempts are its
//! children); a follower's wait for it is a `coalesced wait` span.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::board::AnswerBoard;
use super::cache::{AnswerCache, CacheLookup};
use super::coalesce::{wait_for, Coalescer, Fetched, Leader, Origin, Patience, Role};
use super::context::LookupContext;
use super::replicas::Fetcher;
use crate::answer::Answer;
use crate::budget::Priority;
use crate::error::ApiError;
use crate::support::Clock;
use crate::task::FlowId;
use crate::telemetry::traces::{Kind, Traces};
use crate::telemetry::{Metrics, Served};
use crate::upstream::UpstreamClient;

/// What a lookup produced and how.
pub(crate) struct Lookup {
    pub answer: Arc<Answer>,
    pub served: Served,
}

struct Inner {
    cache: AnswerCache,
    coalescer: Arc<Coalescer>,
    fetcher: Fetcher,
    board: Arc<AnswerBoard>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    traces: Traces,
    fetch_timeout: Duration,
    /// How long an ask keeps a processing task's refresh wanted: three processing intervals.
    refresh_interest: Duration,
}

/// Shared lookup state, built once and handed to every worker.
#[derive(Clone)]
pub(crate) struct LookupService {
    inner: Arc<Inner>,
}

impl LookupService {
    pub(crate) fn new(
        cache: AnswerCache,
        fetcher: Fetcher,
        board: Arc<AnswerBoard>,
        fetch_timeout: Duration,
    ) -> Self {
        let metrics = Arc::clone(&fetcher.attempts.metrics);
        let clock = Arc::clone(&fetcher.attempts.clock);
        let traces = fetcher.attempts.traces.clone();
        let refresh_interest = 3 * cache
            .policy()
            .processing_ttl
            .max(Duration::from_millis(100));
        Self {
            inner: Arc::new(Inner {
                refresh_interest,
                cache,
                coalescer: Arc::new(Coalescer::default()),
                fetcher,
                board,
                metrics,
                clock,
                traces,
                fetch_timeout,
            }),
        }
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    pub(crate) fn traces(&self) -> &Traces {
        &self.inner.traces
    }

    /// Looks up one task, answering by `context.deadline` at the latest.
    pub(crate) async fn lookup(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
    ) -> Result<Lookup, ApiError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let known = match inner.cache.lookup(flow_id, now).await {
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
        let ask = match &known {
            // Known: the caller never waits for budget, and keeps the refresh wanted a while.
            Some(stale) => Ask {
                priority: Priority::Refresh {
                    fetched_at: stale.fetched_at,
                },
                wanted_until: now + inner.refresh_interest.max(context.wanted_for),
                patience: Patience::UntilSetback {
                    deadline: context.deadline,
                    slot_within: inner.cache.policy().refresh_wait(),
                },
            },
            // Unknown: the caller waits for budget, until its call could still be answered
            // before its deadline (then it is told when to come back, and the call keeps its
            // place), and for the answer until its deadline.
            None => {
                let allowance = inner.fetcher.attempts.budget.answer_allowance();
                let last_grant = context.deadline.checked_sub(allowance).unwrap_or(now);
                Ask {
                    priority: Priority::Unknown,
                    wanted_until: context.budget_wait_until,
                    patience: Patience::UntilDone {
                        budget_until: context.budget_wait_until.min(last_grant),
                        deadline: context.deadline,
                    },
                }
            }
        };
        let (result, role) = self.fetch_or_join(client, flow_id, now, context, ask).await;
        let result = match (result, known) {
            // The refresh could not be had at once, or failed on the upstream's side: the last
            // known status beats waiting or an error.
            (Err(error), Some(stale)) if !stale.usable(inner.clock.now()).is_zero() => {
                match stale_because(&error) {
                    Some(served) => {
                        log::debug!("serving the last known processing status: {error}");
                        Ok(Lookup {
                            answer: stale,
                            served,
                        })
                    }
                    None => Err(error),
                }
            }
            (result, _) => result,
        };
        // Counted once, by how the caller was finally served (a failed lookup by its role).
        inner
            .metrics
            .record_lookup(result.as_ref().map_or(role, |found| found.served));
        result
    }

    /// Leads a fetch for this flow id or joins the one under way, and waits for its result as
    /// `ask` allows. Also says which it was (`Miss` for the leader, `Coalesced` for a follower).
    async fn fetch_or_join(
        &self,
        client: &UpstreamClient,
        flow_id: FlowId,
        now: Instant,
        context: &LookupContext,
        ask: Ask,
    ) -> (Result<Lookup, ApiError>, Served) {
        let inner = &self.inner;
        let clock = inner.clock.as_ref();
        match inner.coalescer.join(flow_id, ask.wanted_until) {
            Role::Leader(leader, receiver) => {
                // The fetch has its own deadline, the longest any caller may have. A task nothing
                // is known about keeps its call's place while its callers wait out a
                // `Retry-After` (as long as they come back): its deadline follows them.
                let kept_call_time = match ask.priority {
                    Priority::Unknown => Some(inner.fetch_timeout),
                    Priority::Refresh { .. } => None,
                };
                let fetch_context = LookupContext {
                    deadline: now + inner.fetch_timeout,
                    kept_call_time,
                    ..context.clone()
                };
                let service = self.clone();
                let client = client.clone();
                let priority = ask.priority;
                // Detached: the fetch finishes for the followers even if this caller leaves.
                actix_rt::spawn(inner.traces.carry(async move {
                    service
                        .fetch(leader, &client, flow_id, fetch_context, priority)
                        .await;
                }));
                let result = wait_for(receiver, ask.patience, clock).await;
                let served = match &result {
                    Ok(Fetched {
                        origin: Origin::SharedCache,
                        ..
                    }) => Served::Hit,
                    Ok(Fetched {
                        origin: Origin::Peer,
                        ..
                    }) => Served::Coalesced,
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
                let span = inner.traces.start("coalesced wait", Kind::Internal);
                span.set("taskgate.flow_id", flow_id.get());
                let result = wait_for(receiver, ask.patience, clock).await;
                if let Err(error) = &result {
                    span.set("error.type", error.slug());
                    span.fail(error.slug());
                }
                drop(span);
                inner.metrics.coalesced_waiters.dec();
                let found = result.map(|fetched| Lookup {
                    answer: fetched.answer,
                    served: Served::Coalesced,
                });
                (found, Served::Coalesced)
            }
        }
    }

    /// The leader's fetch, bounded by its deadline: stores the answer locally, posts it to the
    /// answer board and publishes the result to the followers.
    async fn fetch(
        &self,
        leader: Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: LookupContext,
        priority: Priority,
    ) {
        let inner = &self.inner;
        inner.metrics.inflight_fetches.inc();
        let span = inner.traces.start("fetch", Kind::Internal);
        if span.is_recording() {
            span.set("taskgate.flow_id", flow_id.get());
            let priority = match priority {
                Priority::Unknown => "unknown",
                Priority::Refresh { .. } => "refresh",
            };
            span.set("taskgate.budget.priority", priority);
        }
        let work = inner
            .fetcher
            .fetch(&leader, client, flow_id, &context, priority);
        let result = {
            let mut work = std::pin::pin!(span.wrap(work));
            let mut deadline = context.deadline;
            loop {
                match tokio::time::timeout_at(deadline, work.as_mut()).await {
                    Ok(result) => break result,
                    // A kept call's deadline moved while it waited: its callers came back.
                    Err(_) => match context.deadline_now(leader.interest()) {
                        later if later > deadline => deadline = later,
                        _ => break Err(ApiError::DeadlineExceeded),
                    },
                }
            }
        };
        match &result {
            Ok(fetched) => span.set("taskgate.fetch.origin", fetched.origin.as_str()),
            Err(error) => {
                span.set("error.type", error.slug());
                span.fail(error.slug());
            }
        }
        drop(span);
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
}

/// What one lookup asks of the fetch it joins.
struct Ask {
    priority: Priority,
    wanted_until: Instant,
    patience: Patience,
}

/// Why a known processing task is answered with its last known status instead of `error`: the
/// budget is short (the refresh queues for a slot, or Tencent throttles), or the refresh failed
/// on the upstream's side (stale-if-error). Errors of the caller's own making are passed on.
fn stale_because(error: &ApiError) -> Option<Served> {
    match error {
        ApiError::BudgetExhausted { .. } | ApiError::Throttled { .. } => Some(Served::Revalidating),
        ApiError::Upstream(e) if e.is_throttled() => Some(Served::Revalidating),
        error if error.status().is_server_error() => Some(Served::Stale),
        _ => None,
    }
}
