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
    until: Mutex<Instant>,
}

impl Interest {
    pub(crate) fn until(at: Instant) -> Self {
        Self {
            until: Mutex::new(at),
        }
    }

    /// Someone else asked: wanted until `at`, if that is later than already known.
    pub(crate) fn extend(&self, at: Instant) {
        let mut until = lock(&self.until);
        if at > *until {
            *until = at;
        }
    }

    pub(crate) fn wanted_until(&self) -> Instant {
        *lock(&self.until)
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
}
