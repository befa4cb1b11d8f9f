//! Who asks for a lookup, and until when.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::task::CallerName;

/// Who asks and until when.
#[derive(Debug, Clone)]
pub(crate) struct LookupContext {
    /// The caller's deadline (for a fetch: the fetch's own).
    pub deadline: Instant,
    /// Until when the caller waits for budget when nothing is known about the task:
    /// `TASKGATE_MAX_QUEUE_WAIT`, or a long poll's own wait. Never past `deadline`.
    pub budget_wait_until: Instant,
    /// How long this ask keeps a processing task's refresh wanted, beyond the default of three
    /// processing intervals (a long poll's poller asks less often).
    pub wanted_for: Duration,
    /// The request id, sent upstream as `X-TC-TraceId`.
    pub trace_id: Option<Arc<str>>,
    /// The authenticated caller, whose queue the fetch waits in for budget.
    pub caller: Option<CallerName>,
}
