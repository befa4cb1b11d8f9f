//! What a queued call is worth: its priority (a task nothing is known about, or the refresh of a
//! processing answer, by how stale it is) and until when anyone still wants it.
//!
//! A call nobody wants is never made: every lookup that asks for a task extends its interest,
//! and a queued call whose interest has lapsed leaves the queue without spending a slot.

use std::sync::Mutex;

use tokio::time::Instant;

use crate::support::lock;

/// Which class of the schedule a call belongs to; unknown tasks always go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Nothing usable is known about the task, and a caller is blocked on it.
    Unknown,
    /// A processing task someone still wants; the answer being refreshed was fetched at this
    /// instant (the stalest is refreshed first).
    Refresh { fetched_at: Instant },
}

/// Until when a queued call is wanted; shared by every lookup of one flow id.
#[derive(Debug)]
pub(crate) struct Interest {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Until when a lookup that asked is still waiting on the call.
    asked_until: Instant,
    /// Until when the call is kept for callers sent away with a `Retry-After`.
    kept_until: Instant,
    /// Lookups that asked after the first (each one that joined the call).
    asks: u64,
}

impl Interest {
    pub(crate) fn until(at: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                asked_until: at,
                kept_until: at,
                asks: 0,
            }),
        }
    }

    /// Someone else asked: wanted until `at`, if that is later than already known.
    pub(crate) fn extend(&self, at: Instant) {
        let mut state = lock(&self.state);
        state.asks += 1;
        state.asked_until = state.asked_until.max(at);
    }

    /// Its callers are sent away and told to come back: kept until `at` for them (not an ask).
    pub(crate) fn keep_until(&self, at: Instant) {
        let mut state = lock(&self.state);
        state.kept_until = state.kept_until.max(at);
    }

    /// How many lookups joined the call so far: a count that moved means someone came back.
    pub(crate) fn asks(&self) -> u64 {
        lock(&self.state).asks
    }

    /// Until when a caller is waiting on the call (after that, any callers were sent away).
    pub(crate) fn asked_until(&self) -> Instant {
        lock(&self.state).asked_until
    }

    pub(crate) fn wanted_until(&self) -> Instant {
        let state = lock(&self.state);
        state.asked_until.max(state.kept_until)
    }

    pub(crate) fn is_wanted(&self, now: Instant) -> bool {
        now < self.wanted_until()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn interest_only_grows() {
        let t0 = Instant::now();
        let interest = Interest::until(t0 + Duration::from_secs(3));
        interest.extend(t0 + Duration::from_secs(1));
        assert_eq!(interest.wanted_until(), t0 + Duration::from_secs(3));
        interest.extend(t0 + Duration::from_secs(5));
        assert!(interest.is_wanted(t0 + Duration::from_secs(4)));
        assert!(!interest.is_wanted(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn keeping_a_call_for_callers_sent_away_is_not_an_ask() {
        let t0 = Instant::now();
        let interest = Interest::until(t0 + Duration::from_secs(2));
        interest.keep_until(t0 + Duration::from_secs(10));
        assert_eq!(interest.asks(), 0);
        assert_eq!(interest.asked_until(), t0 + Duration::from_secs(2));
        assert!(interest.is_wanted(t0 + Duration::from_secs(9)));
        interest.extend(t0 + Duration::from_secs(4));
        assert_eq!(interest.asks(), 1);
        assert_eq!(interest.asked_until(), t0 + Duration::from_secs(4));
        assert_eq!(interest.wanted_until(), t0 + Duration::from_secs(10));
    }
}
