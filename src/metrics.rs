//! One owned Prometheus registry and typed handles for everything taskgate measures.
//!
//! Labels come from enums (routes, outcomes, cache results) or from a closed list of upstream error
//! codes, never from flow ids or caller input, so series stay bounded. Every family is exported from
//! the start with its known label combinations at zero: a fresh replica never shows a gap.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::upstream::{ErrorFamily, UpstreamError};

/// Route templates: the only values the `route` label takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Task,
    Healthz,
    Readyz,
    Metrics,
    Unmatched,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::Task,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Unmatched,
    ];
    pub fn template(self) -> &'static str {
        match self {
            Route::Task => "/tasks/{flow_id}",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Unmatched => "unmatched",
        }
    }
    /// The route a path is served by (the task route takes every path under `/tasks/`).
    pub fn of_path(path: &str) -> Self {
        match path {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            p if p.starts_with("/tasks/") => Route::Task,
            _ => Route::Unmatched,
        }
    }
}

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Success,
    NotFound,
    InvalidRequest,
    Throttled,
    AuthFailure,
    PermissionDenied,
    UpstreamError,
    BadStatus,
    Malformed,
    Transport,
    Timeout,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 11] = [
        CallOutcome::Success,
        CallOutcome::NotFound,
        CallOutcome::InvalidRequest,
        CallOutcome::Throttled,
        CallOutcome::AuthFailure,
        CallOutcome::PermissionDenied,
        CallOutcome::UpstreamError,
        CallOutcome::BadStatus,
        CallOutcome::Malformed,
        CallOutcome::Transport,
        CallOutcome::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::NotFound => "not_found",
            CallOutcome::InvalidRequest => "invalid_request",
            CallOutcome::Throttled => "throttled",
            CallOutcome::AuthFailure => "auth_failure",
            CallOutcome::PermissionDenied => "permission_denied",
            CallOutcome::UpstreamError => "upstream_error",
            CallOutcome::BadStatus => "bad_status",
            CallOutcome::Malformed => "malformed",
            CallOutcome::Transport => "transport",
            CallOutcome::Timeout => "timeout",
        }
    }

    pub fn of<T>(result: &Result<T, UpstreamError>) -> Self {
        match result {
            Ok(_) => CallOutcome::Success,
            Err(UpstreamError::Api(answer)) => Self::of_family(ErrorFamily::of(&answer.code)),
            Err(UpstreamError::HttpStatus { .. }) => CallOutcome::BadStatus,
            Err(UpstreamError::Malformed { .. }) => CallOutcome::Malformed,
            Err(UpstreamError::Transport { .. }) => CallOutcome::Transport,
            Err(UpstreamError::Timeout) => CallOutcome::Timeout,
        }
    }

    fn of_family(family: ErrorFamily) -> Self {
        match family {
            ErrorFamily::NotFound => CallOutcome::NotFound,
            ErrorFamily::InvalidRequest => CallOutcome::InvalidRequest,
            ErrorFamily::Throttled => CallOutcome::Throttled,
            ErrorFamily::Auth => CallOutcome::AuthFailure,
            ErrorFamily::Permission => CallOutcome::PermissionDenied,
            ErrorFamily::Unavailable | ErrorFamily::Other => CallOutcome::UpstreamError,
        }
    }
}

/// Upstream error codes that get a series of their own; any other code counts as `other`.
/// Common codes from Tencent Cloud's "Error Codes" page plus the SSM action's own.
pub const KNOWN_ERROR_CODES: &[&str] = &[
    "AuthFailure",
    "AuthFailure.InvalidAuthorization",
    "AuthFailure.InvalidSecretId",
    "AuthFailure.MFAFailure",
    "AuthFailure.SecretIdNotFound",
    "AuthFailure.SignatureExpire",
    "AuthFailure.SignatureFailure",
    "AuthFailure.TokenFailure",
    "AuthFailure.UnauthorizedOperation",
    "FailedOperation",
    "InternalError",
    "InvalidAction",
    "InvalidParameter",
    "InvalidParameterValue",
    "MissingParameter",
    "UnknownParameter",
    "OperationDenied",
    "RequestLimitExceeded",
    "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
    "RequestLimitExceeded.IPLimitExceeded",
    "RequestLimitExceeded.UinLimitExceeded",
    "ResourceNotFound",
    "ResourceUnavailable",
    "ResourceUnavailable.NotPurchased",
    "ServiceUnavailable",
    "UnauthorizedOperation",
];

/// The `code` label for an upstream result: a known code, `other`, or `none` (no error code).
pub fn code_label<T>(result: &Result<T, UpstreamError>) -> &'static str {
    match result {
        Err(UpstreamError::Api(answer)) => KNOWN_ERROR_CODES
            .iter()
            .find(|known| **known == answer.code)
            .copied()
            .unwrap_or("other"),
        _ => "none",
    }
}

/// How a lookup was served: the `X-Cache` header and the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the cache, no upstream call.
    Hit,
    /// This request's own upstream call.
    Miss,
    /// Waited on another request's upstream call.
    Shared,
    /// The last known processing status, served because its refresh failed (stale-if-error).
    Stale,
}

impl Served {
    pub const ALL: [Served; 4] = [Served::Hit, Served::Miss, Served::Shared, Served::Stale];
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Miss => "miss",
            Served::Shared => "shared",
            Served::Stale => "stale",
        }
    }
}

/// Why the limiter turned a lookup away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRejection {
    QueueFull,
    WaitTimeout,
}

impl BudgetRejection {
    pub const ALL: [BudgetRejection; 2] =
        [BudgetRejection::QueueFull, BudgetRejection::WaitTimeout];
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetRejection::QueueFull => "queue_full",
            BudgetRejection::WaitTimeout => "wait_timeout",
        }
    }
}

/// The state of shared mode (Redis), one gauge series each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedMode {
    /// No Redis configured: self-contained.
    Off,
    /// Using the shared budget, cache and lookups.
    Shared,
    /// Sending nothing for one window while changing budgets.
    Quiet,
    /// Redis unavailable: local caches and a local share of the budget.
    Degraded,
}

impl SharedMode {
    pub const ALL: [SharedMode; 4] = [
        SharedMode::Off,
        SharedMode::Shared,
        SharedMode::Quiet,
        SharedMode::Degraded,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SharedMode::Off => "off",
            SharedMode::Shared => "shared",
            SharedMode::Quiet => "quiet",
            SharedMode::Degraded => "degraded",
        }
    }
}

/// The circuit breaker's state, one gauge series each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// How a long poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The task left processing.
    Completed,
    /// The wait ran out with the task still processing.
    TimedOut,
    /// Answered early because taskgate is shutting down.
    Shutdown,
    /// Not held: too many requests were waiting already.
    Overflow,
}

impl WaitEnd {
    pub const ALL: [WaitEnd; 4] = [
        WaitEnd::Completed,
        WaitEnd::TimedOut,
        WaitEnd::Shutdown,
        WaitEnd::Overflow,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Completed => "completed",
            WaitEnd::TimedOut => "timed_out",
            WaitEnd::Shutdown => "shutdown",
            WaitEnd::Overflow => "overflow",
        }
    }
}

/// The `caller` label of requests without caller authentication configured.
pub const ANONYMOUS_CALLER: &str = "anonymous";
/// The `caller` label of requests refused for a missing or unknown token.
pub const REJECTED_CALLER: &str = "rejected";

/// Status codes taskgate answers with, pre-initialised so rates never start from a gap.
const STATUSES: [u16; 12] = [200, 400, 401, 404, 405, 414, 431, 500, 502, 503, 504, 304];

/// Handles of the series every request touches, so the hot path does no label hashing.
struct HotHttpSeries {
    requests: Vec<Vec<IntCounter>>,
    durations: Vec<Histogram>,
    anonymous_caller: IntCounter,
}

/// All of taskgate's metrics, built once and shared.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub upstream_calls: IntCounterVec,
    pub upstream_duration: Histogram,
    pub upstream_retries: IntCounter,
    pub cache_lookups: IntCounterVec,
    pub cache_lookups_hit: IntCounter,
    pub cache_lookups_miss: IntCounter,
    pub cache_lookups_shared: IntCounter,
    pub cache_entries: IntGauge,
    pub cache_weighted_size: IntGauge,
    pub coalesced_waiters: IntGauge,
    pub inflight_fetches: IntGauge,
    pub budget_queue_depth: IntGauge,
    pub budget_wait: Histogram,
    pub budget_rejections: IntCounterVec,
    pub budget_effective_rate: Gauge,
    pub budget_limit: IntGauge,
    pub ready: IntGauge,
    pub shared_mode: IntGaugeVec,
    pub redis_errors: IntCounter,
    pub breaker_state: IntGaugeVec,
    pub retries_denied: IntCounter,
    pub file_reloads: IntCounterVec,
    pub credentials_expiry: Gauge,
    pub caller_requests: IntCounterVec,
    pub signature_expired: IntCounter,
    pub clock_skew: Gauge,
    http_hot: HotHttpSeries,
    pub log_lines_dropped: IntCounter,
    pub waiters: IntGauge,
    pub pollers: IntGauge,
    pub wait_duration: Histogram,
    pub waits: IntCounterVec,
    pub cache_lookups_stale: IntCounter,
}

impl Metrics {
    pub fn new(rate_limit: u32) -> Self {
        let registry = Registry::new();
        let cache_lookups = IntCounterVec::new(
            Opts::new("taskgate_cache_lookups_total", "Task lookups by how they were served: hit (cache), miss (own upstream call), shared (waited on another's call)."),
            &["result"],
        )
        .unwrap();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "taskgate_http_requests_total",
                "HTTP requests answered, by route template and status code.",
            ),
            &["route", "status"],
        )
        .unwrap();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "taskgate_http_request_duration_seconds",
                "Time to answer an HTTP request, by route template.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )
        .unwrap();
        let caller_requests = IntCounterVec::new(
            Opts::new(
                "taskgate_caller_requests_total",
                "Task requests by authenticated caller (names from TASKGATE_CALLER_TOKENS_FILE; anonymous without it; rejected for missing or bad tokens).",
            ),
            &["caller"],
        )
        .unwrap();
        // Every known (route, status) series exists from the start, at zero.
        let http_hot = HotHttpSeries {
            requests: Route::ALL
                .iter()
                .map(|route| {
                    STATUSES
                        .iter()
                        .map(|status| {
                            http_requests
                                .with_label_values(&[route.template(), &status.to_string()])
                        })
                        .collect()
                })
                .collect(),
            durations: Route::ALL
                .iter()
                .map(|route| http_duration.with_label_values(&[route.template()]))
                .collect(),
            anonymous_caller: caller_requests.with_label_values(&[ANONYMOUS_CALLER]),
        };
        let m = Self {
            http_hot,
            http_requests,
            http_duration,
            caller_requests,
            cache_lookups_hit: cache_lookups.with_label_values(&[Served::Hit.as_str()]),
            cache_lookups_miss: cache_lookups.with_label_values(&[Served::Miss.as_str()]),
            cache_lookups_shared: cache_lookups.with_label_values(&[Served::Shared.as_str()]),
            cache_lookups_stale: cache_lookups.with_label_values(&[Served::Stale.as_str()]),
            cache_lookups,
            upstream_calls: IntCounterVec::new(
                Opts::new("taskgate_upstream_calls_total", "Upstream DescribeAsyncRequestInfo attempts, by outcome and upstream error code."),
                &["outcome", "code"],
            )
            .unwrap(),
            upstream_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "taskgate_upstream_call_duration_seconds",
                    "Duration of one upstream attempt, from sending to the last byte of the answer.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )
            .unwrap(),
            upstream_retries: IntCounter::new(
                "taskgate_upstream_retries_total",
                "Upstream attempts that were retries of a throttled or failed attempt.",
            )
            .unwrap(),
            cache_entries: IntGauge::new("taskgate_cache_entries", "Answers held in the cache.").unwrap(),
            cache_weighted_size: IntGauge::new(
                "taskgate_cache_weighted_size_bytes",
                "Approximate memory held by cached answers (the quantity TASKGATE_CACHE_CAPACITY bounds).",
            )
            .unwrap(),
            coalesced_waiters: IntGauge::new(
                "taskgate_coalesced_waiters",
                "Requests currently waiting on another request's upstream call.",
            )
            .unwrap(),
            inflight_fetches: IntGauge::new(
                "taskgate_inflight_fetches",
                "Distinct flow ids with an upstream fetch under way.",
            )
            .unwrap(),
            budget_queue_depth: IntGauge::new(
                "taskgate_budget_queue_depth",
                "Lookups waiting for upstream budget.",
            )
            .unwrap(),
            budget_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "taskgate_budget_wait_seconds",
                    "Time a lookup waited for upstream budget (0 when budget was free).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
                ]),
            )
            .unwrap(),
            budget_rejections: IntCounterVec::new(
                Opts::new("taskgate_budget_rejections_total", "Lookups answered 503 because no upstream budget could be had in time."),
                &["reason"],
            )
            .unwrap(),
            budget_effective_rate: Gauge::new(
                "taskgate_budget_effective_rate",
                "Upstream calls per second currently allowed (lowered after throttling, recovering gradually).",
            )
            .unwrap(),
            budget_limit: IntGauge::new(
                "taskgate_budget_limit",
                "Configured upstream calls per second (TASKGATE_RATE_LIMIT).",
            )
            .unwrap(),
            ready: IntGauge::new("taskgate_ready", "1 when this replica reports ready, 0 otherwise.")
                .unwrap(),
            shared_mode: IntGaugeVec::new(
                Opts::new(
                    "taskgate_shared_mode",
                    "1 for the current state of shared mode: off (no Redis), shared, quiet (changing budgets), degraded (Redis unavailable).",
                ),
                &["mode"],
            )
            .unwrap(),
            redis_errors: IntCounter::new(
                "taskgate_redis_errors_total",
                "Redis operations that failed or timed out.",
            )
            .unwrap(),
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "taskgate_circuit_breaker_state",
                    "1 for the upstream circuit breaker's current state: closed, open, half_open.",
                ),
                &["state"],
            )
            .unwrap(),
            file_reloads: IntCounterVec::new(
                Opts::new(
                    "taskgate_file_reloads_total",
                    "Re-reads of credential and token sources, by file (credentials, caller_tokens: after a change; cvm_role: renewals before expiry) and result (ok, error: what was in force stays in force).",
                ),
                &["file", "result"],
            )
            .unwrap(),
            credentials_expiry: Gauge::new(
                "taskgate_credentials_expiry_seconds",
                "Seconds until the temporary credentials in use expire (negative once expired; +Inf for long-term keys).",
            )
            .unwrap(),
            log_lines_dropped: IntCounter::new(
                "taskgate_log_lines_dropped_total",
                "Log lines dropped because standard error could not keep up (16 MiB unwritten).",
            )
            .unwrap(),
            waiters: IntGauge::new(
                "taskgate_waiters",
                "Requests holding a long poll (?wait= or Prefer: wait) on a processing task.",
            )
            .unwrap(),
            pollers: IntGauge::new(
                "taskgate_pollers",
                "Tasks this replica polls for long-poll waiters (one per task, whatever the number of waiters).",
            )
            .unwrap(),
            wait_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "taskgate_wait_duration_seconds",
                    "How long long-poll requests were held.",
                )
                .buckets(vec![0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0]),
            )
            .unwrap(),
            waits: IntCounterVec::new(
                Opts::new(
                    "taskgate_waits_total",
                    "Long polls by how they ended: completed, timed_out, shutdown, overflow (not held: too many waiters).",
                ),
                &["ended"],
            )
            .unwrap(),
            signature_expired: IntCounter::new(
                "taskgate_signature_expired_total",
                "Upstream AuthFailure.SignatureExpire answers: this host's clock is off.",
            )
            .unwrap(),
            clock_skew: Gauge::new(
                "taskgate_clock_skew_seconds",
                "Local clock minus the upstream's Date header, measured at the last SignatureExpire (0 until then).",
            )
            .unwrap(),
            retries_denied: IntCounter::new(
                "taskgate_upstream_retries_denied_total",
                "Retries of transient upstream failures not made because the retry budget was spent.",
            )
            .unwrap(),
            registry,
        };
        m.register_all();
        m.initialise_series(rate_limit);
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        r.register(Box::new(self.http_requests.clone())).unwrap();
        r.register(Box::new(self.http_duration.clone())).unwrap();
        r.register(Box::new(self.upstream_calls.clone())).unwrap();
        r.register(Box::new(self.upstream_duration.clone()))
            .unwrap();
        r.register(Box::new(self.upstream_retries.clone())).unwrap();
        r.register(Box::new(self.cache_lookups.clone())).unwrap();
        r.register(Box::new(self.cache_entries.clone())).unwrap();
        r.register(Box::new(self.cache_weighted_size.clone()))
            .unwrap();
        r.register(Box::new(self.coalesced_waiters.clone()))
            .unwrap();
        r.register(Box::new(self.inflight_fetches.clone())).unwrap();
        r.register(Box::new(self.budget_queue_depth.clone()))
            .unwrap();
        r.register(Box::new(self.budget_wait.clone())).unwrap();
        r.register(Box::new(self.budget_rejections.clone()))
            .unwrap();
        r.register(Box::new(self.budget_effective_rate.clone()))
            .unwrap();
        r.register(Box::new(self.budget_limit.clone())).unwrap();
        r.register(Box::new(self.ready.clone())).unwrap();
        r.register(Box::new(self.shared_mode.clone())).unwrap();
        r.register(Box::new(self.redis_errors.clone())).unwrap();
        r.register(Box::new(self.breaker_state.clone())).unwrap();
        r.register(Box::new(self.retries_denied.clone())).unwrap();
        r.register(Box::new(self.file_reloads.clone())).unwrap();
        r.register(Box::new(self.credentials_expiry.clone()))
            .unwrap();
        r.register(Box::new(self.caller_requests.clone())).unwrap();
        r.register(Box::new(self.signature_expired.clone()))
            .unwrap();
        r.register(Box::new(self.clock_skew.clone())).unwrap();
        r.register(Box::new(self.log_lines_dropped.clone()))
            .unwrap();
        r.register(Box::new(self.waiters.clone())).unwrap();
        r.register(Box::new(self.pollers.clone())).unwrap();
        r.register(Box::new(self.wait_duration.clone())).unwrap();
        r.register(Box::new(self.waits.clone())).unwrap();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap();
        let build_info = IntGaugeVec::new(
            Opts::new("taskgate_build_info", "Build information; always 1."),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        r.register(Box::new(build_info)).unwrap();
    }

    fn initialise_series(&self, rate_limit: u32) {
        for outcome in CallOutcome::ALL {
            self.upstream_calls
                .with_label_values(&[outcome.as_str(), "none"]);
        }
        for code in KNOWN_ERROR_CODES {
            let outcome = CallOutcome::of_family(ErrorFamily::of(code));
            self.upstream_calls
                .with_label_values(&[outcome.as_str(), code]);
        }
        for outcome in CallOutcome::ALL {
            if outcome != CallOutcome::Success {
                self.upstream_calls
                    .with_label_values(&[outcome.as_str(), "other"]);
            }
        }
        for served in Served::ALL {
            self.cache_lookups.with_label_values(&[served.as_str()]);
        }
        for reason in BudgetRejection::ALL {
            self.budget_rejections.with_label_values(&[reason.as_str()]);
        }
        self.budget_limit.set(i64::from(rate_limit));
        self.set_shared_mode(SharedMode::Off);
        self.set_breaker_state(BreakerState::Closed);
        for file in ["credentials", "caller_tokens", "cvm_role"] {
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
        self.budget_effective_rate.set(f64::from(rate_limit));
    }

    pub fn set_breaker_state(&self, current: BreakerState) {
        for state in BreakerState::ALL {
            self.breaker_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == current));
        }
    }

    pub fn set_shared_mode(&self, current: SharedMode) {
        for mode in SharedMode::ALL {
            self.shared_mode
                .with_label_values(&[mode.as_str()])
                .set(i64::from(mode == current));
        }
    }

    pub fn record_upstream_call<T>(&self, result: &Result<T, UpstreamError>, seconds: f64) {
        self.upstream_calls
            .with_label_values(&[CallOutcome::of(result).as_str(), code_label(result)])
            .inc();
        self.upstream_duration.observe(seconds);
    }

    /// Counts one answered request; the common series are resolved once, at start.
    pub fn record_http(&self, route: Route, status: u16, seconds: f64) {
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
    pub fn record_wait(&self, ended: WaitEnd, held: std::time::Duration) {
        self.waits.with_label_values(&[ended.as_str()]).inc();
        self.wait_duration.observe(held.as_secs_f64());
    }

    /// Counts one task request for its caller.
    pub fn record_caller(&self, caller: &str) {
        if caller == ANONYMOUS_CALLER {
            self.http_hot.anonymous_caller.inc();
        } else {
            self.caller_requests.with_label_values(&[caller]).inc();
        }
    }

    /// The text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        out
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
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
        assert!(text.contains(
            r#"taskgate_upstream_calls_total{code="AuthFailure.SignatureFailure",outcome="auth_failure"} 0"#
        ));
    }

    #[test]
    fn unknown_codes_collapse_to_other() {
        let result: Result<(), UpstreamError> = Err(UpstreamError::Api(
            crate::upstream::answer::ApiErrorAnswer {
                code: "Flow.42.Secret".into(),
                message: String::new(),
                request_id: None,
                server_date: None,
            },
        ));
        assert_eq!(code_label(&result), "other");
    }
}
