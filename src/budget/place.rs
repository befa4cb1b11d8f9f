//! A queued call's place, for the callers who are answered `503` while it waits: their
//! `Retry-After` is read from the schedule as it is when they are answered, not from the estimate
//! made when the call queued. An estimate made at a burst's first instant counts on a pace and a
//! share that may not hold (the upstream answering slower at first, a replica alone until the
//! others renew their leases); read later, it corrects itself, and a caller told too early is
//! not told "1 s" again and again while the call waits its turn. A caller that holds a usable
//! answer reads from it whether the slot is a moment away, and then waits for the fresh answer.

use std::fmt;
use std::sync::Weak;

use tokio::time::Instant;

use super::dispatcher::Budget;

/// Where a call waits in the budget's schedule.
#[derive(Clone)]
pub(crate) struct Place {
    budget: Weak<Budget>,
    id: u64,
}

impl Place {
    pub(super) fn new(budget: Weak<Budget>, id: u64) -> Self {
        Self { budget, id }
    }

    /// `Retry-After` for a caller answered now: when the call's place comes, less half a queue
    /// wait. `None` once the call has left the schedule.
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        self.budget.upgrade()?.retry_after_for(self.id)
    }

    /// When the call is likely to get its slot, read now. `None` once it has left the schedule.
    pub(crate) fn slot_expected_at(&self) -> Option<Instant> {
        self.budget.upgrade()?.slot_expected_for(self.id)
    }
}

impl fmt::Debug for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Place").field("id", &self.id).finish()
    }
}
