//! Who asks for a lookup, and until when.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::Interest;
use crate::task::CallerName;

/// Who asks and until when.
#[derive(Debug, Clone)]
pub(crate) struct LookupContext {
    /// When the caller asked (for a fetch: the lookup that started it).
    pub asked_at: Instant,
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
    /// For the fetch of a task nothing is known about: how long its call may take once made.
    /// Such a call is kept for the callers it sends away, so its deadline follows them
    /// (`deadline_now`). `None` for a caller's own lookup and for a refresh.
    pub kept_call_time: Option<Duration>,
}

impl LookupContext {
    /// The deadline as of now. A fetch whose call is kept for callers sent away lasts until they
    /// are expected back (`Interest::wanted_until`, which grows each time one comes back and is
    /// told again) and then as long as a call may take: it cannot know at its start how long
    /// the queue ahead of it will take, and cut short, it would answer its callers 504 on their
    /// return where its slot was still to come.
    pub(crate) fn deadline_now(&self, interest: &Interest) -> Instant {
        match self.kept_call_time {
            Some(call_time) => self.deadline.max(interest.wanted_until() + call_time),
            None => self.deadline,
        }
    }
}
