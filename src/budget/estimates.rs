//! What the budget tells callers about time: when a queued call's slot is likely to come, as
//! `Retry-After` for callers sent away (from where the call stands when each is answered), as
//! the bound of a fetch that waits for a slot, and as the instant a caller holding an answer
//! judges whether the fresh one is worth a moment's wait. Estimates only; nothing here takes a
//! slot.

use std::time::Duration;

use tokio::time::Instant;

use super::dispatcher::{Budget, WindowAndQueue};
use super::interest::Priority;

/// The least time left for a call between the end of a caller's wait for budget and its deadline.
const ANSWER_ALLOWANCE_FLOOR: Duration = Duration::from_millis(100);

impl Budget {
    /// How long before a caller's deadline its wait for budget ends, so that a call whose slot
    /// comes at the end of the wait is answered in time: twice the usual answer time, at least
    /// 100 ms. Without it, a long poll whose wait is its whole timeout and whose call went out in
    /// the last moment was answered 504 while the answer was on its way (1-10 of 1 000 at
    /// N = 1000 with three replicas), where a caller still queued is told when to come back.
    pub(crate) fn answer_allowance(&self) -> Duration {
        let usual = self.lock().state.usual_answer_time();
        (usual * 2).max(ANSWER_ALLOWANCE_FLOOR)
    }

    /// The rate `Retry-After` is estimated at: in shared mode the rate this replica can expect.
    fn expected_cap(&self, now: Instant) -> Option<f64> {
        self.lease
            .as_ref()
            .map(|lease| lease.expected_rate(now).max(1.0))
    }

    /// `Retry-After` for a newcomer at `position` in the queue.
    pub(super) fn retry_after_secs_at(
        &self,
        locked: &mut WindowAndQueue,
        now: Instant,
        position: usize,
    ) -> u64 {
        let cap = self.expected_cap(now);
        locked.state.retry_after_secs(now, position, cap)
    }

    /// `Retry-After` for the callers of the queued call `id`, from its place in the schedule as
    /// it is now; `None` once it has left the schedule.
    pub(super) fn retry_after_for(&self, id: u64) -> Option<u64> {
        let now = self.clock.now();
        let at = self.slot_expected_at(id, now)?;
        Some(self.config.retry_after_secs(now, at))
    }

    /// When the queued call `id` is likely to get its slot, from its place in the schedule as it
    /// is now; `None` once it has left the schedule.
    pub(super) fn slot_expected_for(&self, id: u64) -> Option<Instant> {
        self.slot_expected_at(id, self.clock.now())
    }

    fn slot_expected_at(&self, id: u64, now: Instant) -> Option<Instant> {
        let cap = self.expected_cap(now);
        let mut locked = self.lock();
        // Callers whose waits end within a window are about to be sent away too.
        let position = locked.queue.position_of(id, now + self.config.window)?;
        Some(locked.state.estimate_slot_at(now, position, cap))
    }

    /// `Retry-After` for a newcomer of `priority`, from the schedule as it is now.
    pub(crate) fn retry_after_secs(&self, priority: Priority) -> u64 {
        let now = self.clock.now();
        let mut locked = self.lock();
        let position = locked.queue.position_for(priority);
        self.retry_after_secs_at(&mut locked, now, position)
    }
}
