//! One owned Prometheus registry and typed handles for everything taskgate measures.
//!
//! Labels come from the enums of `labels` or from a closed list of upstream error codes, never
//! from flow ids or caller input, so series stay bounded. Every family is exported from the start
//! with its known label combinations at zero: a fresh replica never shows a gap.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Registry, TextEncoder,
};

use super::labels::{
    code_label, BreakerState, BudgetRejection, CallOutcome, Route, ScheduleClass, Served,
    SharedMode, WaitEnd, ANONYMOUS_CALLER, KNOWN_ERROR_CODES, REJECTED_CALLER,
};
use super::lease_metrics::LeaseMetrics;
use super::registry::{counter, counters, float_gauge, gauge, gauges, histogram, registered};
use super::traces::TraceCounters;
use crate::support::reload::ReloadCounters;
use crate::upstream::{ErrorFamily, UpstreamError};

/// Status codes taskgate answers with, pre-initialised so rates never start from a gap.
const STATUSES: [u16; 12] = [200, 400, 401, 404, 405, 414, 431, 500, 502, 503, 504, 304];

/// What `taskgate_file_reloads_total` counts re-reads of (its `file` label).
pub(super) const RELOADED_FILES: [&str; 3] = ["credentials", "caller_tokens", "cvm_role"];

/// Handles of the series every request touches, so the hot path does no label hashing.
struct HotHttpSeries {
    requests: Vec<Vec<IntCounter>>,
    durations: Vec<Histogram>,
    anonymous_caller: IntCounter,
}

/// All of taskgate's metrics, built once and shared.
pub struct Metrics {
    registry: Registry,
    http_hot: HotHttpSeries,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub caller_requests: IntCounterVec,
    pub upstream_calls: IntCounterVec,
    pub upstream_duration: Histogram,
    pub upstream_retries: IntCounter,
    pub retries_denied: IntCounter,
    pub signature_expired: IntCounter,
    pub clock_skew: Gauge,
    pub cache_lookups: IntCounterVec,
    pub cache_lookups_hit: IntCounter,
    pub cache_lookups_miss: IntCounter,
    pub cache_lookups_coalesced: IntCounter,
    pub cache_lookups_stale: IntCounter,
    pub cache_lookups_revalidating: IntCounter,
    pub cache_entries: IntGauge,
    pub cache_weighted_size: IntGauge,
    pub coalesced_waiters: IntGauge,
    pub inflight_fetches: IntGauge,
    pub budget_queue_depth: IntGauge,
    pub budget_wait: Histogram,
    pub budget_rejections: IntCounterVec,
    pub budget_effective_rate: Gauge,
    pub budget_limit: IntGauge,
    pub budget_slots_used: IntGauge,
    pub scheduled_calls: IntCounterVec,
    pub schedule_unwanted: IntCounterVec,
    pub refresh_lag: Histogram,
    pub breaker_state: IntGaugeVec,
    pub shared_mode: IntGaugeVec,
    pub redis_errors: IntCounter,
    pub waiters: IntGauge,
    pub pollers: IntGauge,
    pub wait_duration: Histogram,
    pub waits: IntCounterVec,
    pub file_reloads: IntCounterVec,
    pub credentials_expiry: Gauge,
    pub ready: IntGauge,
    pub log_lines_dropped: IntCounter,
    pub(crate) traces: TraceCounters,
    pub(crate) lease: LeaseMetrics,
}

impl Metrics {
    pub(crate) fn new(rate_limit: u32) -> Self {
        let r = Registry::new();
        let http_requests = counters(
            &r,
            "taskgate_http_requests_total",
            "HTTP requests answered, by route template and status code.",
            &["route", "status"],
        );
        let http_duration = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "taskgate_http_request_duration_seconds",
                    "Time to answer an HTTP request, by route template.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["route"],
            )
            .expect("valid metric"),
        );
        let caller_requests = counters(
            &r,
            "taskgate_caller_requests_total",
            "Task requests by authenticated caller (names from TASKGATE_CALLER_TOKENS_FILE; anonymous without it; rejected for missing or bad tokens).",
            &["caller"],
        );
        let cache_lookups = counters(
            &r,
            "taskgate_cache_lookups_total",
            "Task lookups by how they were served: hit (cache), miss (own upstream call), shared (waited on another's call).",
            &["result"],
        );
        let lookups = |served: Served| cache_lookups.with_label_values(&[served.as_str()]);
        let metrics = Self {
            http_hot: HotHttpSeries::resolve(&http_requests, &http_duration, &caller_requests),
            cache_lookups_hit: lookups(Served::Hit),
            cache_lookups_miss: lookups(Served::Miss),
            cache_lookups_coalesced: lookups(Served::Coalesced),
            cache_lookups_stale: lookups(Served::Stale),
            cache_lookups_revalidating: lookups(Served::Revalidating),
            http_requests,
            http_duration,
            caller_requests,
            cache_lookups,
            upstream_calls: counters(
                &r,
                "taskgate_upstream_calls_total",
                "Upstream DescribeAsyncRequestInfo attempts, by outcome and upstream error code.",
                &["outcome", "code"],
            ),
            upstream_duration: histogram(
                &r,
                "taskgate_upstream_call_duration_seconds",
                "Duration of one upstream attempt, from sending to the last byte of the answer.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            upstream_retries: counter(
                &r,
                "taskgate_upstream_retries_total",
                "Upstream attempts that were retries of a throttled or failed attempt.",
            ),
            retries_denied: counter(
                &r,
                "taskgate_upstream_retries_denied_total",
                "Retries of transient upstream failures not made because the retry budget was spent.",
            ),
            signature_expired: counter(
                &r,
                "taskgate_signature_expired_total",
                "Upstream AuthFailure.SignatureExpire answers: this host's clock is off.",
            ),
            clock_skew: float_gauge(
                &r,
                "taskgate_clock_skew_seconds",
                "Local clock minus the upstream's Date header, measured at the last SignatureExpire (0 until then).",
            ),
            cache_entries: gauge(&r, "taskgate_cache_entries", "Answers held in the cache."),
            cache_weighted_size: gauge(
                &r,
                "taskgate_cache_weighted_size_bytes",
                "Approximate memory held by cached answers (the quantity TASKGATE_CACHE_CAPACITY bounds).",
            ),
            coalesced_waiters: gauge(
                &r,
                "taskgate_coalesced_waiters",
                "Requests currently waiting on another request's upstream call.",
            ),
            inflight_fetches: gauge(
                &r,
                "taskgate_inflight_fetches",
                "Distinct flow ids with an upstream fetch under way.",
            ),
            budget_queue_depth: gauge(
                &r,
                "taskgate_budget_queue_depth",
                "Lookups waiting for upstream budget.",
            ),
            budget_wait: histogram(
                &r,
                "taskgate_budget_wait_seconds",
                "Time a lookup waited for upstream budget (0 when budget was free).",
                &[0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0],
            ),
            budget_rejections: counters(
                &r,
                "taskgate_budget_rejections_total",
                "Lookups answered 503 because no upstream budget could be had in time.",
                &["reason"],
            ),
            budget_effective_rate: float_gauge(
                &r,
                "taskgate_budget_effective_rate",
                "Upstream calls per second currently allowed (lowered after throttling, recovering gradually).",
            ),
            budget_limit: gauge(
                &r,
                "taskgate_budget_limit",
                "Configured upstream calls per second (TASKGATE_RATE_LIMIT).",
            ),
            budget_slots_used: gauge(
                &r,
                "taskgate_budget_slots_used",
                "Upstream slots this replica counts in the sliding window now (calls in flight and answered within the last window), against taskgate_budget_limit.",
            ),
            scheduled_calls: counters(
                &r,
                "taskgate_scheduled_calls_total",
                "Upstream slots handed out by the schedule, by class: unknown (a task nothing is known about, a caller waiting) or refresh (a processing task someone still wants).",
                &["class"],
            ),
            schedule_unwanted: counters(
                &r,
                "taskgate_schedule_unwanted_total",
                "Calls that left the schedule without a slot because nobody wanted them any more (callers gone, no recent ask), by class.",
                &["class"],
            ),
            refresh_lag: histogram(
                &r,
                "taskgate_refresh_lag_seconds",
                "Age of a processing answer when its refresh got an upstream slot (about the processing interval when the budget suffices; N/R seconds with N tasks processing at R calls/s).",
                &[0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0],
            ),
            breaker_state: gauges(
                &r,
                "taskgate_circuit_breaker_state",
                "1 for the upstream circuit breaker's current state: closed, open, half_open.",
                &["state"],
            ),
            shared_mode: gauges(
                &r,
                "taskgate_shared_mode",
                "1 for the current state of shared mode: off (no Redis), shared (the lease renews), degraded (Redis unavailable: spending the lease, then the safe share), quiet (Redis unavailable and nothing left to spend, or not reached yet since start).",
                &["mode"],
            ),
            redis_errors: counter(
                &r,
                "taskgate_redis_errors_total",
                "Redis operations that failed or timed out.",
            ),
            waiters: gauge(
                &r,
                "taskgate_waiters",
                "Requests holding a long poll (?wait= or Prefer: wait) on a processing task.",
            ),
            pollers: gauge(
                &r,
                "taskgate_pollers",
                "Tasks this replica polls for long-poll waiters (one per task, whatever the number of waiters).",
            ),
            wait_duration: histogram(
                &r,
                "taskgate_wait_duration_seconds",
                "How long long-poll requests were held.",
                &[0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0],
            ),
            waits: counters(
                &r,
                "taskgate_waits_total",
                "Long polls by how they ended: completed, timed_out, shutdown, overflow (not held: too many waiters).",
                &["ended"],
            ),
            file_reloads: counters(
                &r,
                "taskgate_file_reloads_total",
                "Re-reads of credential and token sources, by file (credentials, caller_tokens: after a change; cvm_role: renewals before expiry) and result (ok, error: what was in force stays in force).",
                &["file", "result"],
            ),
            credentials_expiry: float_gauge(
                &r,
                "taskgate_credentials_expiry_seconds",
                "Seconds until the temporary credentials in use expire (negative once expired; +Inf for long-term keys).",
            ),
            ready: gauge(
                &r,
                "taskgate_ready",
                "1 when this replica reports ready, 0 otherwise.",
            ),
            log_lines_dropped: counter(
                &r,
                "taskgate_log_lines_dropped_total",
                "Log lines dropped because standard error could not keep up (16 MiB unwritten).",
            ),
            traces: TraceCounters::register(&r),
            lease: LeaseMetrics::register(&r),
            registry: r,
        };
        metrics.register_process_and_build_info();
        metrics.initialise_series(rate_limit);
        metrics
    }

    fn register_process_and_build_info(&self) {
        #[cfg(target_os = "linux")]
        self.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");
        let build_info = gauges(
            &self.registry,
            "taskgate_build_info",
            "Build information; always 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
    }

    fn initialise_series(&self, rate_limit: u32) {
        for outcome in CallOutcome::ALL {
            self.upstream_calls
                .with_label_values(&[outcome.as_str(), "none"]);
            if outcome != CallOutcome::Success {
                self.upstream_calls
                    .with_label_values(&[outcome.as_str(), "other"]);
            }
        }
        for code in KNOWN_ERROR_CODES {
            let outcome = CallOutcome::of_family(ErrorFamily::of(code));
            self.upstream_calls
                .with_label_values(&[outcome.as_str(), code]);
        }
        for served in Served::ALL {
            self.cache_lookups.with_label_values(&[served.as_str()]);
        }
        for class in ScheduleClass::ALL {
            self.scheduled_calls.with_label_values(&[class.as_str()]);
            self.schedule_unwanted.with_label_values(&[class.as_str()]);
        }
        for reason in BudgetRejection::ALL {
            self.budget_rejections.with_label_values(&[reason.as_str()]);
        }
        self.budget_limit.set(i64::from(rate_limit));
        self.budget_effective_rate.set(f64::from(rate_limit));
        self.set_shared_mode(SharedMode::Off);
        self.set_breaker_state(BreakerState::Closed);
        for file in RELOADED_FILES {
            for result in ["ok", "error"] {
                self.file_reloads.with_label_values(&[file, result]);
            }
        }
        self.credentials_expiry.set(f64::INFINITY);
        for ended in WaitEnd::ALL {
            self.waits.with_label_values(&[ended.as_str()]);
        }
        for caller in [ANONYMOUS_CALLER, REJECTED_CALLER] {
            self.caller_requests.with_label_values(&[caller]);
        }
    }

    /// The counters a re-read `file` (one of `RELOADED_FILES`) bumps.
    pub(crate) fn reload_counters(&self, file: &str) -> ReloadCounters {
        ReloadCounters {
            ok: self.file_reloads.with_label_values(&[file, "ok"]),
            error: self.file_reloads.with_label_values(&[file, "error"]),
        }
    }

    /// Exports a caller's series at zero (caller names come from the tokens file only).
    pub(crate) fn add_caller(&self, caller: &str) {
        self.caller_requests.with_label_values(&[caller]);
    }

    pub(crate) fn set_breaker_state(&self, current: BreakerState) {
        for state in BreakerState::ALL {
            self.breaker_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == current));
        }
    }

    pub(crate) fn set_shared_mode(&self, current: SharedMode) {
        for mode in SharedMode::ALL {
            self.shared_mode
                .with_label_values(&[mode.as_str()])
                .set(i64::from(mode == current));
        }
    }

    pub(crate) fn record_upstream_call<T>(&self, result: &Result<T, UpstreamError>, seconds: f64) {
        self.upstream_calls
            .with_label_values(&[CallOutcome::of(result).as_str(), code_label(result)])
            .inc();
        self.upstream_duration.observe(seconds);
    }

    /// Counts one lookup by how its caller was finally served.
    pub(crate) fn record_lookup(&self, served: Served) {
        match served {
            Served::Hit => self.cache_lookups_hit.inc(),
            Served::Miss => self.cache_lookups_miss.inc(),
            Served::Coalesced => self.cache_lookups_coalesced.inc(),
            Served::Stale => self.cache_lookups_stale.inc(),
            Served::Revalidating => self.cache_lookups_revalidating.inc(),
        }
    }

    /// Counts one slot handed out by the schedule.
    pub(crate) fn record_scheduled(&self, class: ScheduleClass) {
        self.scheduled_calls
            .with_label_values(&[class.as_str()])
            .inc();
    }

    /// Counts one call that left the schedule unwanted.
    pub(crate) fn record_unwanted(&self, class: ScheduleClass) {
        self.schedule_unwanted
            .with_label_values(&[class.as_str()])
            .inc();
    }

    /// Counts one answered request; the common series are resolved once, at start.
    pub(crate) fn record_http(&self, route: Route, status: u16, seconds: f64) {
        let route_index = route as usize;
        match STATUSES.iter().position(|s| *s == status) {
            Some(status_index) => self.http_hot.requests[route_index][status_index].inc(),
            None => self
                .http_requests
                .with_label_values(&[route.template(), &status.to_string()])
                .inc(),
        }
        self.http_hot.durations[route_index].observe(seconds);
    }

    /// Counts one long poll by how it ended.
    pub(crate) fn record_wait(&self, ended: WaitEnd, held: std::time::Duration) {
        self.waits.with_label_values(&[ended.as_str()]).inc();
        self.wait_duration.observe(held.as_secs_f64());
    }

    /// Counts one task request for its caller.
    pub(crate) fn record_caller(&self, caller: &str) {
        if caller == ANONYMOUS_CALLER {
            self.http_hot.anonymous_caller.inc();
        } else {
            self.caller_requests.with_label_values(&[caller]).inc();
        }
    }

    /// The text exposition of every family.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }
}

impl HotHttpSeries {
    /// Every known (route, status) series exists from the start, at zero.
    fn resolve(
        requests: &IntCounterVec,
        durations: &HistogramVec,
        callers: &IntCounterVec,
    ) -> Self {
        Self {
            requests: Route::ALL
                .iter()
                .map(|route| {
                    STATUSES
                        .iter()
                        .map(|status| {
                            requests.with_label_values(&[route.template(), &status.to_string()])
                        })
                        .collect()
                })
                .collect(),
            durations: Route::ALL
                .iter()
                .map(|route| durations.with_label_values(&[route.template()]))
                .collect(),
            anonymous_caller: callers.with_label_values(&[ANONYMOUS_CALLER]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_before_any_traffic() {
        let metrics = Metrics::new(20);
        let text = String::from_utf8(metrics.render()).unwrap();
        for family in [
            "taskgate_http_requests_total",
            "taskgate_upstream_calls_total",
            "taskgate_upstream_call_duration_seconds",
            "taskgate_cache_lookups_total",
            "taskgate_budget_rejections_total",
            "taskgate_budget_effective_rate",
            "taskgate_build_info",
            "taskgate_trace_spans_dropped_total",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
        assert!(text.contains(
            r#"taskgate_upstream_calls_total{code="AuthFailure.SignatureFailure",outcome="auth_failure"} 0"#
        ));
        assert!(text.contains(r#"taskgate_upstream_calls_total{code="none",outcome="tls"} 0"#));
        assert!(text.contains(r#"taskgate_trace_spans_dropped_total{reason="queue_full"} 0"#));
    }
}
