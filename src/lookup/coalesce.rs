//! One upstream fetch per flow id at a time, shared by every concurrent lookup of it.
//!
//! The first lookup of a flow id becomes the leader and starts a detached fetch; later ones
//! follow it through a watch channel. Each follower waits only until its own deadline, so a stuck
//! fetch never holds anyone past theirs, and a caller that leaves cancels nothing. While pending,
//! the channel carries the fetch's latest setback (throttled, queued for budget), so a caller
//! whose wait ends learns the truthful reason rather than a bare timeout; a caller that holds a
//! usable answer already takes the first setback as its cue to serve that answer instead, unless
//! the fetch is queued for a slot expected within a moment (it waits that moment for it).
//!
//! Every lookup that joins extends the fetch's interest (`budget::Interest`): the fetch keeps its
//! place in the schedule for as long as anyone wants it, and leaves it when nobody does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::budget::{Interest, Place};
use crate::error::ApiError;
use crate::support::{lock, retry_after_left, Clock};
use crate::task::FlowId;

/// Where a fetched answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// This replica's own upstream call.
    Upstream,
    /// The shared cache (another replica fetched it earlier).
    SharedCache,
    /// Another replica's upstream call, which this one waited on.
    Peer,
}

impl Origin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::SharedCache => "shared_cache",
            Self::Peer => "peer",
        }
    }
}

/// A fetch's answer and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub answer: Arc<Answer>,
    pub origin: Origin,
}

/// What a fetch has come to so far.
#[derive(Debug, Clone)]
pub(super) enum Progress {
    /// Under way; with the latest setback and when it happened, and while the fetch waits for
    /// budget, its place in the schedule (what a caller answered then is told to wait).
    Pending {
        setback: Option<(ApiError, Instant)>,
        place: Option<Place>,
    },
    Done(Result<Fetched, ApiError>),
}

/// The leader's side: publish progress, then the result. Dropping it unregisters the fetch.
pub(crate) struct Leader {
    flow_id: FlowId,
    sender: watch::Sender<Progress>,
    registry: Arc<Coalescer>,
    interest: Arc<Interest>,
}

impl Leader {
    /// The fetch met a setback at `now`: throttled, or an attempt failed.
    pub(crate) fn setback(&self, error: ApiError, now: Instant) {
        self.sender.send_replace(Progress::Pending {
            setback: Some((error, now)),
            place: None,
        });
    }

    /// The fetch queued for budget at `now`, told `error` (its `Retry-After`), waiting at `place`.
    pub(crate) fn queued(&self, error: ApiError, now: Instant, place: Place) {
        self.sender.send_replace(Progress::Pending {
            setback: Some((error, now)),
            place: Some(place),
        });
    }

    /// The setback is over (a slot was granted): the fetch is calling the upstream.
    pub(crate) fn resumed(&self) {
        self.sender.send_if_modified(|progress| match progress {
            Progress::Pending { setback, place } if setback.is_some() => {
                *setback = None;
                *place = None;
                true
            }
            _ => false,
        });
    }

    /// Until when anyone wants this fetch; extended by every lookup that joins it.
    pub(crate) fn interest(&self) -> &Arc<Interest> {
        &self.interest
    }

    /// Unregisters the fetch, then wakes every follower with the result. The caller stores the
    /// result in the cache first, so a lookup arriving in between finds it there.
    pub(crate) fn finish(self, result: Result<Fetched, ApiError>) {
        self.registry.remove(self.flow_id);
        self.sender.send_replace(Progress::Done(result));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Also on panic or cancellation: a stale entry would park every later lookup.
        self.registry.remove(self.flow_id);
    }
}

/// A lookup's role for one flow id.
pub(super) enum Role {
    Leader(Leader, watch::Receiver<Progress>),
    Follower(watch::Receiver<Progress>),
}

/// A fetch under way: how to follow it, and its interest.
struct InFlight {
    receiver: watch::Receiver<Progress>,
    interest: Arc<Interest>,
}

/// The registry of fetches under way, one per flow id.
#[derive(Default)]
pub(super) struct Coalescer {
    fetches: Mutex<HashMap<FlowId, InFlight>>,
}

impl Coalescer {
    /// Leads a new fetch of `flow_id` or follows the one under way; either way the fetch is
    /// wanted until `wanted_until` at least.
    pub(super) fn join(self: &Arc<Self>, flow_id: FlowId, wanted_until: Instant) -> Role {
        let mut fetches = lock(&self.fetches);
        if let Some(fetch) = fetches.get(&flow_id) {
            fetch.interest.extend(wanted_until);
            return Role::Follower(fetch.receiver.clone());
        }
        let (sender, receiver) = watch::channel(Progress::Pending {
            setback: None,
            place: None,
        });
        let interest = Arc::new(Interest::until(wanted_until));
        fetches.insert(
            flow_id,
            InFlight {
                receiver: receiver.clone(),
                interest: Arc::clone(&interest),
            },
        );
        Role::Leader(
            Leader {
                flow_id,
                sender,
                registry: Arc::clone(self),
                interest,
            },
            receiver,
        )
    }

    fn remove(&self, flow_id: FlowId) {
        lock(&self.fetches).remove(&flow_id);
    }
}

/// How long a lookup waits for a fetch it leads or follows.
#[derive(Debug, Clone, Copy)]
pub(super) enum Patience {
    /// Until the fetch ends, or until `budget_until` while it waits for budget, or `deadline`.
    UntilDone {
        budget_until: Instant,
        deadline: Instant,
    },
    /// Holds a usable answer already: only until the fetch's first setback, or `deadline`. A
    /// fetch queued for a slot expected within `slot_within` is waited for that long first: the
    /// fresh answer a moment later beats the one held (see `CachePolicy::refresh_wait`).
    UntilSetback {
        deadline: Instant,
        slot_within: Duration,
    },
}

/// Waits for a fetch's result as `patience` allows. A wait that ends early returns the fetch's
/// setback (budget exhausted, with the `Retry-After` still ahead; throttled; an attempt's error).
pub(super) async fn wait_for(
    mut receiver: watch::Receiver<Progress>,
    patience: Patience,
    clock: &dyn Clock,
) -> Result<Fetched, ApiError> {
    let deadline = match patience {
        Patience::UntilDone { deadline, .. } | Patience::UntilSetback { deadline, .. } => deadline,
    };
    // For a caller holding an answer: until when it waits for a slot expected soon.
    let mut slot_soon_until: Option<Instant> = None;
    loop {
        let now = clock.now();
        let wake = {
            // Copied out and the channel released first: reading a place takes the budget's
            // lock, under which the leader publishes that it queued.
            let (setback, place) = match &*receiver.borrow_and_update() {
                Progress::Done(result) => return result.clone(),
                Progress::Pending { setback, place } => (setback.clone(), place.clone()),
            };
            match (patience, setback) {
                (Patience::UntilSetback { slot_within, .. }, Some((error, _))) => {
                    let until = *slot_soon_until.get_or_insert_with(|| {
                        let soon = now + slot_within;
                        match place.as_ref().and_then(Place::slot_expected_at) {
                            Some(slot_at) if slot_at <= soon => soon,
                            _ => now,
                        }
                    });
                    if now >= until.min(deadline) {
                        return Err(error);
                    }
                    until.min(deadline)
                }
                (
                    Patience::UntilDone { budget_until, .. },
                    Some((ApiError::BudgetExhausted { retry_after_secs }, since)),
                ) => {
                    if now >= budget_until.min(deadline) {
                        // From where the call stands now; else what is left of what was told.
                        let waited = now.saturating_duration_since(since);
                        let retry_after_secs = place
                            .as_ref()
                            .and_then(Place::retry_after_secs)
                            .unwrap_or_else(|| retry_after_left(retry_after_secs, waited));
                        return Err(ApiError::BudgetExhausted { retry_after_secs });
                    }
                    budget_until.min(deadline)
                }
                (_, setback) if now >= deadline => {
                    return Err(setback.map_or(ApiError::DeadlineExceeded, |(error, _)| error))
                }
                _ => deadline,
            }
        };
        tokio::select! {
            changed = receiver.changed() => {
                if changed.is_err() {
                    return Err(ApiError::Internal(
                        "the shared upstream fetch ended without a result".into(),
                    ));
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fetch_per_task_and_every_ask_extends_its_interest() {
        let coalescer = Arc::new(Coalescer::default());
        let flow_id = FlowId::new(7).unwrap();
        let t0 = Instant::now();
        let Role::Leader(leader, _) = coalescer.join(flow_id, t0 + Duration::from_secs(3)) else {
            panic!("the first lookup leads");
        };
        assert!(matches!(
            coalescer.join(flow_id, t0 + Duration::from_secs(5)),
            Role::Follower(_)
        ));
        assert_eq!(
            leader.interest().wanted_until(),
            t0 + Duration::from_secs(5)
        );
        leader.finish(Err(ApiError::DeadlineExceeded));
        assert!(matches!(coalescer.join(flow_id, t0), Role::Leader(..)));
    }
}
