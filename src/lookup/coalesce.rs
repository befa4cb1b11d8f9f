//! One upstream fetch per flow id at a time, shared by every concurrent lookup of it.
//!
//! The first lookup of a flow id becomes the leader and starts a detached fetch; later ones
//! follow it through a watch channel. Each follower waits only until its own deadline, so a stuck
//! fetch never holds anyone past theirs, and a caller that leaves cancels nothing. While pending,
//! the channel carries the fetch's latest setback (throttled, queued for budget), so a caller
//! whose deadline passes learns the truthful reason rather than a bare timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::error::ApiError;
use crate::support::lock;
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

/// A fetch's answer and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub answer: Arc<Answer>,
    pub origin: Origin,
}

/// What a fetch has come to so far.
#[derive(Debug, Clone)]
pub(super) enum Progress {
    Pending { setback: Option<ApiError> },
    Done(Result<Fetched, ApiError>),
}

/// The leader's side: publish progress, then the result. Dropping it unregisters the fetch.
pub(crate) struct Leader {
    flow_id: FlowId,
    sender: watch::Sender<Progress>,
    registry: Arc<Coalescer>,
}

impl Leader {
    pub(crate) fn setback(&self, error: ApiError) {
        self.sender.send_replace(Progress::Pending {
            setback: Some(error),
        });
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

/// The registry of fetches under way, one per flow id.
#[derive(Default)]
pub(super) struct Coalescer {
    fetches: Mutex<HashMap<FlowId, watch::Receiver<Progress>>>,
}

impl Coalescer {
    pub(super) fn join(self: &Arc<Self>, flow_id: FlowId) -> Role {
        let mut fetches = lock(&self.fetches);
        if let Some(receiver) = fetches.get(&flow_id) {
            return Role::Follower(receiver.clone());
        }
        let (sender, receiver) = watch::channel(Progress::Pending { setback: None });
        fetches.insert(flow_id, receiver.clone());
        Role::Leader(
            Leader {
                flow_id,
                sender,
                registry: Arc::clone(self),
            },
            receiver,
        )
    }

    fn remove(&self, flow_id: FlowId) {
        lock(&self.fetches).remove(&flow_id);
    }
}

/// Waits for a fetch's result until `deadline`.
pub(super) async fn wait_for(
    mut receiver: watch::Receiver<Progress>,
    deadline: Instant,
) -> Result<Fetched, ApiError> {
    let done = tokio::time::timeout_at(
        deadline,
        receiver.wait_for(|p| matches!(p, Progress::Done(_))),
    )
    .await
    .map(|waited| {
        waited.map(|progress| match &*progress {
            Progress::Done(result) => result.clone(),
            Progress::Pending { .. } => unreachable!("waited for Done"),
        })
    });
    match done {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ApiError::Internal(
            "the shared upstream fetch ended without a result".into(),
        )),
        Err(_) => match &*receiver.borrow() {
            Progress::Pending {
                setback: Some(error),
            } => Err(error.clone()),
            _ => Err(ApiError::DeadlineExceeded),
        },
    }
}
