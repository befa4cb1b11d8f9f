//! What operators see: metrics, logs, and the access line of every request.
//!
//! - `labels`: the enums and closed lists metric labels take (never flow ids or secrets)
//! - `metrics`: the Prometheus registry and typed handles; `lease_metrics`: the shared budget's lease
//! - `registry`: declaring a metric in one expression (build, register, keep the handle)
//! - `logging`: text or JSON lines on standard error, written off the request path
//! - `access`: the access-log line (target `taskgate::access`)
//! - `request`: what a request is known by: its id, its caller, the upstream's RequestId
//! - `traces`: OpenTelemetry traces: W3C Trace Context in, OTLP/HTTP out (off unless configured)

pub(crate) mod access;
pub(crate) mod labels;
mod lease_metrics;
pub mod logging;
mod metrics;
mod registry;
pub(crate) mod request;
pub(crate) mod traces;

pub(crate) use labels::{
    BreakerState, BudgetRejection, CallOutcome, Route, ScheduleClass, Served, SharedMode, WaitEnd,
    ANONYMOUS_CALLER, REJECTED_CALLER,
};
pub(crate) use logging::LogFormat;
pub(crate) use metrics::Metrics;
pub(crate) use request::{CallerLabel, RequestId, UpstreamRequestId};
