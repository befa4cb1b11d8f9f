//! The values metric labels take: enums and closed lists, never flow ids or caller input, so that
//! every series is known in advance (and exported at zero from the start).

use crate::upstream::{ErrorFamily, UpstreamError};

/// Route templates: the only values the `route` label takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Task,
    Healthz,
    Readyz,
    Metrics,
    Unmatched,
}

impl Route {
    pub(crate) const ALL: [Route; 5] = [
        Route::Task,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Unmatched,
    ];
    pub(crate) fn template(self) -> &'static str {
        match self {
            Route::Task => "/tasks/{flow_id}",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Unmatched => "unmatched",
        }
    }
    /// The route a path is served by (the task route takes every path under `/tasks/`).
    pub(crate) fn of_path(path: &str) -> Self {
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
pub(crate) enum CallOutcome {
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
    Tls,
    Timeout,
}

impl CallOutcome {
    pub(crate) const ALL: [CallOutcome; 12] = [
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
        CallOutcome::Tls,
        CallOutcome::Timeout,
    ];

    pub(crate) fn as_str(self) -> &'static str {
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
            CallOutcome::Tls => "tls",
            CallOutcome::Timeout => "timeout",
        }
    }

    pub(crate) fn of<T>(result: &Result<T, UpstreamError>) -> Self {
        match result {
            Ok(_) => CallOutcome::Success,
            Err(UpstreamError::Api(answer)) => Self::of_family(ErrorFamily::of(&answer.code)),
            Err(UpstreamError::HttpStatus { .. }) => CallOutcome::BadStatus,
            Err(UpstreamError::Malformed { .. }) => CallOutcome::Malformed,
            Err(UpstreamError::Transport { .. }) => CallOutcome::Transport,
            Err(UpstreamError::Tls { .. }) => CallOutcome::Tls,
            Err(UpstreamError::Timeout) => CallOutcome::Timeout,
        }
    }

    pub(crate) fn of_family(family: ErrorFamily) -> Self {
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
pub(crate) const KNOWN_ERROR_CODES: &[&str] = &[
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
pub(crate) fn code_label<T>(result: &Result<T, UpstreamError>) -> &'static str {
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
pub(crate) enum Served {
    /// From the cache, no upstream call.
    Hit,
    /// This request's own upstream call.
    Miss,
    /// Waited on another request's upstream call (coalesced); `X-Cache: shared`.
    Coalesced,
    /// The last known processing status, served because its refresh failed (stale-if-error).
    Stale,
    /// The last known processing status, served at once while its refresh waits for budget
    /// (stale-while-revalidate); `X-Cache: stale`.
    Revalidating,
}

impl Served {
    pub(crate) const ALL: [Served; 5] = [
        Served::Hit,
        Served::Miss,
        Served::Coalesced,
        Served::Stale,
        Served::Revalidating,
    ];

    /// The `result` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Miss => "miss",
            Served::Coalesced => "shared",
            Served::Stale => "stale",
            Served::Revalidating => "revalidating",
        }
    }

    /// The `X-Cache` value: both kinds of stale answer are `stale` to callers.
    pub(crate) fn x_cache(self) -> &'static str {
        match self {
            Served::Revalidating => "stale",
            other => other.as_str(),
        }
    }
}

/// The schedule's classes, by what an upstream call is for (the `class` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScheduleClass {
    /// A task nothing usable is known about.
    Unknown,
    /// The refresh of a processing task someone still wants.
    Refresh,
}

impl ScheduleClass {
    pub(crate) const ALL: [ScheduleClass; 2] = [ScheduleClass::Unknown, ScheduleClass::Refresh];
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ScheduleClass::Unknown => "unknown",
            ScheduleClass::Refresh => "refresh",
        }
    }
}

/// Why the limiter turned a lookup away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BudgetRejection {
    QueueFull,
    WaitTimeout,
}

impl BudgetRejection {
    pub(crate) const ALL: [BudgetRejection; 2] =
        [BudgetRejection::QueueFull, BudgetRejection::WaitTimeout];
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BudgetRejection::QueueFull => "queue_full",
            BudgetRejection::WaitTimeout => "wait_timeout",
        }
    }
}

/// The state of shared mode (Redis), one gauge series each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedMode {
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
    pub(crate) const ALL: [SharedMode; 4] = [
        SharedMode::Off,
        SharedMode::Shared,
        SharedMode::Quiet,
        SharedMode::Degraded,
    ];
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub(crate) const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// How a long poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
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
    pub(crate) const ALL: [WaitEnd; 4] = [
        WaitEnd::Completed,
        WaitEnd::TimedOut,
        WaitEnd::Shutdown,
        WaitEnd::Overflow,
    ];
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Completed => "completed",
            WaitEnd::TimedOut => "timed_out",
            WaitEnd::Shutdown => "shutdown",
            WaitEnd::Overflow => "overflow",
        }
    }
}

/// The `caller` label of requests without caller authentication configured.
pub(crate) const ANONYMOUS_CALLER: &str = "anonymous";
/// The `caller` label of requests refused for a missing or unknown token.
pub(crate) const REJECTED_CALLER: &str = "rejected";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_collapse_to_other() {
        let result: Result<(), UpstreamError> =
            Err(UpstreamError::Api(crate::upstream::ApiErrorAnswer {
                code: "Flow.42.Secret".into(),
                message: String::new(),
                request_id: None,
                server_date: None,
            }));
        assert_eq!(code_label(&result), "other");
    }
}
