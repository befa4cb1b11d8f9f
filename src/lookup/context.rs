//! Who asks for a lookup, and until when.

use std::sync::Arc;

use tokio::time::Instant;

use crate::task::CallerName;

/// Who asks and until when.
#[derive(Debug, Clone)]
pub(crate) struct LookupContext {
    /// The caller's deadline (for a fetch: the fetch's own).
    pub deadline: Instant,
    /// The request id, sent upstream as `X-TC-TraceId`.
    pub trace_id: Option<Arc<str>>,
    /// The authenticated caller, whose queue the fetch waits in for budget.
    pub caller: Option<CallerName>,
}
