//! What the budget tells callers about time: when a queued call's slot is likely to come, as
//! `Retry-After` for callers sent away (from where the call stands when each is answered) and as
//! the bound of a fetch that waits for a slot. Estimates only; nothing here takes a slot.

use std::time::Duration;

use tokio::time::Instant;

use super::dispatcher::{Budget, WindowAndQueue};
use super::interest::Priority;

/// How many times its estimated wait a task nothing is known about may wait for its slot. An
/// estimate made at a burst's first instant can be far off (the replica alone in the lease table,
/// most of the burst not registered yet): twice ended kept calls before their slot (7-19 of 1 000
/// callers at N = 1000 with three replicas, back as told, answered 504), four times still did
/// once (2 of 1 000, an estimate twenty times short). A stopgap: the bound should follow how long
/// the call is kept for its callers (`Interest::wanted_until`), not a multiple of a first guess.
const UNKNOWN_WAIT_SAFETY: u32 = 4;

/// The least time left for a call between the end of a caller's wait for budget and its deadline.
const ANSWER_ALLOWANCE_FLOOR: Duration = Duration::from_millis(100);

impl Budget {
    /// How long a task nothing is known about may wait for its slot from now if its callers are
    /// sent away and its call keeps its place: behind every unknown task queued now (waiting or
    /// kept), or behind `fetches_ahead` when more fetches are under way than have queued yet (a
    /// burst of new tasks is registered before its calls reach the schedule), at the rate this
    /// replica can expect, four times over. It bounds the fetch: a bound too short cuts a kept call
    /// before it is made (its callers, back as told, get 504), and the rate estimated at a
    /// burst's first instant can be far off (a replica alone in the lease table until the others
    /// renew expects 20/s and gets 6.67); a bound too long costs nothing, as a call nobody wants
    /// any more leaves the schedule anyway.
    pub(crate) fn unknown_wait_ahead(&self, fetches_ahead: usize) -> Duration {
        let now = self.clock.now();
        let cap = self.expected_cap(now);
        let mut locked = self.lock();
        let position = locked.queue.unknown_len().max(fetches_ahead);
        let wait = locked
            .state
            .estimate_slot_at(now, position, cap)
            .saturating_duration_since(now);
        wait * UNKNOWN_WAIT_SAFETY
    }

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
        let mut locked = self.lock();
        // Callers whose waits end within a window are about to be sent away too.
        let position = locked.queue.position_of(id, now + self.config.window)?;
        Some(self.retry_after_secs_at(&mut locked, now, position))
    }

    /// `Retry-After` for a newcomer of `priority`, from the schedule as it is now.
    pub(crate) fn retry_after_secs(&self, priority: Priority) -> u64 {
        let now = self.clock.now();
        let mut locked = self.lock();
        let position = locked.queue.position_for(priority);
        self.retry_after_secs_at(&mut locked, now, position)
    }
}
