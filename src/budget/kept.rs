//! A call kept for the callers it sent away.
//!
//! An unknown task's callers who are still waiting when their wait ends are answered 503 with a
//! `Retry-After` read from where the call stands then (`Place`). The call keeps its place for
//! them (`Schedule::send_away`: behind every task with a caller still waiting, before every
//! refresh) until a queue wait and a second after they are due back, so that their answer is
//! there when they return and the budget goes to it rather than to a refresh meanwhile. It is
//! kept from the moment it queues, so that a slot freeing just as they are sent away still finds
//! it wanted, and again each time one of them comes back and is sent away once more. Callers who
//! do not come back let it lapse.

use std::time::Duration;

use tokio::time::Instant;

use super::interest::Interest;
use crate::support::ceil_secs;

/// Kept a little past when the callers sent away are due back and may have waited a queue wait:
/// `Retry-After` is whole seconds, and a caller comes back a moment after it runs out.
const SLACK: Duration = Duration::from_secs(1);

pub(super) struct Keeping {
    /// When the callers sent away last were told to come back.
    due_back: Instant,
    /// How long past the callers' return the call is still kept: a queue wait and the slack.
    grace: Duration,
    /// The interest's ask count when the callers were last sent away; `None` before the first.
    asks_when_sent_away: Option<u64>,
}

impl Keeping {
    /// Starts keeping a call that queued at `queued_at`, its callers told `told_secs`.
    pub(super) fn start(
        interest: &Interest,
        told_secs: u64,
        queued_at: Instant,
        queue_wait: Duration,
    ) -> Self {
        let keeping = Self {
            due_back: queued_at + Duration::from_secs(told_secs),
            grace: queue_wait + SLACK,
            asks_when_sent_away: None,
        };
        interest.keep_until(keeping.due_back + keeping.grace);
        keeping
    }

    /// What is left at `now` of the `Retry-After` the callers were last told (at least 1 s).
    pub(super) fn retry_after_left(&self, now: Instant) -> u64 {
        ceil_secs(self.due_back.saturating_duration_since(now)).max(1)
    }

    /// No caller waits on the call at `now`: the first time, or when one came back since the
    /// last, its callers were just sent away, told `told_now` (from where the call stands now;
    /// `None`: what is left of what they were told), and it is kept for them again (true);
    /// otherwise only an earlier keep is running out (false).
    pub(super) fn sent_away(
        &mut self,
        interest: &Interest,
        now: Instant,
        told_now: Option<u64>,
    ) -> bool {
        let asks = interest.asks();
        if self.asks_when_sent_away == Some(asks) {
            return false;
        }
        self.asks_when_sent_away = Some(asks);
        let told = told_now.unwrap_or_else(|| self.retry_after_left(now));
        self.due_back = now + Duration::from_secs(told);
        interest.keep_until(self.due_back + self.grace);
        true
    }

    /// Its callers were sent away at least once.
    pub(super) fn was_sent_away(&self) -> bool {
        self.asks_when_sent_away.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_until_a_queue_wait_after_the_callers_are_due_back_and_again_when_one_returns() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(2);
        let interest = Interest::until(t0 + wait);
        // Told 5 s: kept until 5 s + the queue wait + the slack from the start.
        let mut keeping = Keeping::start(&interest, 5, t0, wait);
        assert_eq!(interest.wanted_until(), t0 + Duration::from_secs(8));
        assert!(!keeping.was_sent_away());

        // Sent away at 2 s, told the 3 s left: nothing later than already kept.
        assert!(keeping.sent_away(&interest, t0 + wait, None));
        assert!(keeping.was_sent_away());
        assert_eq!(interest.wanted_until(), t0 + Duration::from_secs(8));
        // Nobody came back: the keep just runs out.
        assert!(!keeping.sent_away(&interest, t0 + Duration::from_secs(8), Some(9)));

        // One came back at 5 s and was sent away at 7 s, told 1 s: kept again until 11 s.
        interest.extend(t0 + Duration::from_secs(7));
        assert!(keeping.sent_away(&interest, t0 + Duration::from_secs(7), None));
        assert_eq!(keeping.retry_after_left(t0 + Duration::from_secs(7)), 1);
        assert_eq!(interest.wanted_until(), t0 + Duration::from_secs(11));

        // Another came back and was sent away at 11 s, told 6 s from where the call stands now
        // (its place came later than first thought): kept until 6 s + the queue wait + the slack.
        interest.extend(t0 + Duration::from_secs(11));
        assert!(keeping.sent_away(&interest, t0 + Duration::from_secs(11), Some(6)));
        assert_eq!(keeping.retry_after_left(t0 + Duration::from_secs(12)), 5);
        assert_eq!(interest.wanted_until(), t0 + Duration::from_secs(20));
    }
}
