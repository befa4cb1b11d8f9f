//! A fetch that looks across replicas first (shared mode): the shared cache, then the replica
//! that already fetches this flow id (its lease in Redis), and only then this replica's own
//! attempts, holding the lease so the others wait for it. Without Redis, or while it is
//! unusable, a fetch is this replica's own attempts, within its share of the budget.

use std::sync::Arc;
use std::time::Duration;

use super::attempts::Attempts;
use super::coalesce::{Fetched, Leader, Origin};
use super::context::LookupContext;
use crate::answer::Answer;
use crate::budget::Priority;
use crate::error::ApiError;
use crate::shared::envelope::Outcome;
use crate::shared::{Lease, Peers};
use crate::task::FlowId;
use crate::upstream::UpstreamClient;

/// Extra wait for a peer's published outcome beyond its lease's end.
const LEASE_GRACE: Duration = Duration::from_millis(50);

/// Where a fetch's answer comes from.
pub(crate) struct Fetcher {
    pub attempts: Attempts,
    /// Shared mode's cache and cross-replica lookups, when Redis is configured.
    pub peers: Option<Arc<Peers>>,
}

impl Fetcher {
    pub(crate) async fn fetch(
        &self,
        leader: &Leader,
        client: &UpstreamClient,
        flow_id: FlowId,
        context: &LookupContext,
        priority: Priority,
    ) -> Result<Fetched, ApiError> {
        let own = Own {
            leader,
            client,
            flow_id,
            context,
            priority,
        };
        let Some(peers) = self.peers.as_ref().filter(|p| p.redis().is_usable()) else {
            return self.own(&own).await;
        };
        let clock = &self.attempts.clock;
        match peers.cached(flow_id, clock.now()).await {
            Ok(Some(answer)) => return Ok(fetched(answer, Origin::SharedCache)),
            Ok(None) => {}
            // Redis is unavailable: this replica fetches on its own, within its local share.
            Err(_) => return self.own(&own).await,
        }
        loop {
            // Listen before looking at the lease, so the holder's publish cannot be missed.
            let outcome = peers.register(flow_id);
            match peers.try_lease(flow_id).await {
                Err(_) => {
                    peers.unregister(flow_id);
                    return self.own(&own).await;
                }
                Ok(Lease::Acquired(token)) => {
                    drop(outcome);
                    peers.unregister(flow_id);
                    return self
                        .as_lease_holder(peers, &token, &own)
                        .await
                        .map(|answer| Fetched {
                            answer,
                            origin: Origin::Upstream,
                        });
                }
                Ok(Lease::Held(lease_left)) => {
                    let now = clock.now();
                    if let Ok(Some(answer)) = peers.cached(flow_id, now).await {
                        peers.unregister(flow_id);
                        return Ok(fetched(answer, Origin::SharedCache));
                    }
                    let deadline = context.deadline_now(leader.interest());
                    let wait_until = deadline.min(now + lease_left + LEASE_GRACE);
                    if let Ok(Ok(published)) = tokio::time::timeout_at(wait_until, outcome).await {
                        if let Some(result) = published.into_result(clock.now()) {
                            return result.map(|answer| fetched(answer, Origin::Peer));
                        }
                    }
                    // No outcome within the lease: its holder is gone. Take over.
                    peers.unregister(flow_id);
                }
            }
        }
    }

    /// This replica's own attempts.
    async fn own(&self, own: &Own<'_>) -> Result<Fetched, ApiError> {
        let answer = self.attempts(own).await?;
        Ok(fetched(answer, Origin::Upstream))
    }

    async fn attempts(&self, own: &Own<'_>) -> Result<Answer, ApiError> {
        self.attempts
            .run(
                own.leader,
                own.client,
                own.flow_id,
                own.context,
                own.priority,
            )
            .await
    }

    /// Fetches while holding the cross-replica lease; stores and publishes the outcome.
    async fn as_lease_holder(
        &self,
        peers: &Arc<Peers>,
        token: &str,
        own: &Own<'_>,
    ) -> Result<Arc<Answer>, ApiError> {
        let flow_id = own.flow_id;
        let holding = Holding::start(Arc::clone(peers), flow_id, token);
        let result = self.attempts(own).await.map(Arc::new);
        holding.stop_renewing();
        if let Ok(answer) = &result {
            let remaining = answer.remaining(self.attempts.clock.now());
            peers.store(flow_id, answer, remaining).await;
        }
        peers.finish(flow_id, token, &Outcome::of(&result)).await;
        holding.finished();
        result
    }
}

/// This replica's hold on a flow id while it fetches it, renewed until the attempts end.
///
/// A fetch cut off at its deadline is dropped wherever it is; the hold must not outlive it. Left
/// renewing, it would hold every other lookup of the flow id, on every replica, until their own
/// deadlines; left to run out, for up to its time to live. So a hold dropped before its outcome
/// was published stops renewing and gives the hold back at once, telling any replica waiting on
/// it that the fetch ran out of time.
struct Holding {
    peers: Arc<Peers>,
    flow_id: FlowId,
    /// Until the outcome is published and the hold given back.
    token: Option<String>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Holding {
    fn start(peers: Arc<Peers>, flow_id: FlowId, token: &str) -> Self {
        let keepalive = {
            let peers = Arc::clone(&peers);
            let token = token.to_string();
            tokio::spawn(async move {
                let every = peers.lease_ttl() / 3;
                loop {
                    tokio::time::sleep(every).await;
                    peers.renew(flow_id, &token).await;
                }
            })
        };
        Self {
            peers,
            flow_id,
            token: Some(token.to_string()),
            keepalive,
        }
    }

    fn stop_renewing(&self) {
        self.keepalive.abort();
    }

    /// The outcome was published and the hold given back.
    fn finished(mut self) {
        self.token = None;
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.stop_renewing();
        let Some(token) = self.token.take() else {
            return;
        };
        // Not after the runtime is gone (shutdown): then the hold runs out by itself.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (peers, flow_id) = (Arc::clone(&self.peers), self.flow_id);
        runtime.spawn(async move {
            let outcome = Outcome::of(&Err(ApiError::DeadlineExceeded));
            peers.finish(flow_id, &token, &outcome).await;
        });
    }
}

/// What this replica's own attempts need.
struct Own<'a> {
    leader: &'a Leader,
    client: &'a UpstreamClient,
    flow_id: FlowId,
    context: &'a LookupContext,
    priority: Priority,
}

fn fetched(answer: Answer, origin: Origin) -> Fetched {
    Fetched {
        answer: Arc::new(answer),
        origin,
    }
}
